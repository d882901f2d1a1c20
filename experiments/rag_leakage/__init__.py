"""RAG datastore leakage (Qi et al.): BM25 RAG over planted private records, copy attacks, defences."""
