"""Patient-level diagnosis: a call per patient from a bag of that patient's cells.

``bags`` (cells + frozen embeddings + the patient label), ``methods`` (registered patient methods:
cell-logodds, mean-embedding, attention-mil, composition), ``scorers`` / ``mil`` (the fitted
models), ``protocol`` (nested, repeated patient-grouped CV and its figures), ``train`` (CV + the
``patient`` bundle), ``bundle`` (``PatientBundle``: per-cell probabilities and ``diagnose``),
``call`` (``PatientCall``), ``evaluate`` (a patient bundle on another cohort).
"""
