"""Copy the benchmark tables (bench/results/*.md) into the top-level README between its markers.

    .venv/bin/python bench/render_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Shown in this order; a missing file is skipped (its benchmark has not been run here).
SECTIONS = ["retrieval_quality", "speed", "train_step", "malloc_step", "ranker_answers", "ranker_answers_dropout0", "ranker_lm", "ranker_lm_gemma", "ranker_lm_gemma_500", "ranker_scifact", "ranker_scifact_lm", "ranker_scifact_lm_512", "distill_student", "lm_teacher", "lm_teacher_gemma", "lm_distill", "re2g", "dgr", "dgr_long", "fid_kd", "cotraining_scifact", "cotraining_squad_open", "cotraining_squad_open_ce_answers", "fid_kd_gpu", "scaling"]
START, END = "<!-- BENCHMARKS:START -->", "<!-- BENCHMARKS:END -->"


def demote(markdown: str, levels: int = 2) -> str:
    """Headings one level deeper per `levels`, so each result sits under the README's own heading."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", markdown, flags=re.MULTILINE)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the {START} / {END} markers")
    # Images are linked from bench/results/; from the README they sit below it.
    parts = [demote((RESULTS / f"{name}.md").read_text(encoding="utf-8")).strip().replace("](plots/", "](bench/results/plots/")
             for name in SECTIONS if (RESULTS / f"{name}.md").is_file()]
    body = "\n\n".join(parts)
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n\n{body}\n\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
