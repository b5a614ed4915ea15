"""Class maps shipped with leukoscope (package data): ``--class-map NAME`` finds ``NAME.yaml`` here."""
