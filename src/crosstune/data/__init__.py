"""Target and source data: reading tables (tables.py), images (images.py) and recordings (audio.py); validating
and splitting them (splitting.py) and reading the prepared directory back (prepared_dir.py); encoding texts
for a backbone (text_encoding.py, text_augmentation.py) and batching every modality (batching.py).

Nothing heavy is imported here: import the module you need.
"""
