"""Data layer: readers that produce a Manifest, image decoding, splits and synthetic cells."""
