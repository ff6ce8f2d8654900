"""Dense retrieval: the bi-encoder (`encoder`), vector indexes (`index`) and the retriever (`retriever`)."""

from distillir.retrievers.dense.encoder import BiEncoder, EncoderSettings, encode_corpus_cached
from distillir.retrievers.dense.index import ExactIndex, FaissIndex
from distillir.retrievers.dense.retriever import DenseRetriever

__all__ = ["BiEncoder", "DenseRetriever", "EncoderSettings", "ExactIndex", "FaissIndex", "encode_corpus_cached"]
