"""The web page and HTTP API over a model bundle (``leukoscope serve``)."""
