"""Patient-level methods: estimators that turn a bag of cell embeddings into one patient score."""
