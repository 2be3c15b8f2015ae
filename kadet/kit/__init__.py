"""The retrieval kit (imports only the core): records and readers, offline models, the encoder and
its embedding cache, dense + BM25 search and fusion, comparisons and their wording, query-side towers."""
