"""RETRO's retrieval database and neighbour jobs (Beam; numpy + faiss, never JAX).

    minilm.py      all-MiniLM-L6-v2 in numpy (safetensors + tokenizers): chunk keys
    chunking.py    documents -> fixed-length chunks with continuations and stable ids
    faiss_index.py index choice by size, training on a sample, sharded fill, merge, recall
    build_db.py    the database job (chunk, embed, write shards, build the index)
    leakage.py     13-gram Jaccard overlap against evaluation documents
    neighbours.py  the neighbour job (training rows + their k neighbours -> SeqIO cache)
"""
