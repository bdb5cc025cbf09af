"""The project's embedded synthetic abdominal dataset (SABS layout); see `generate`.

    python -m fafnet.synthetic --out data_processed/synthetic_CT_normalized --supervoxels
"""
