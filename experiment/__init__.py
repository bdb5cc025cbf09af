"""The experiment layer's parts, one concern per module:

- `metrics`: Dice, IoU and confusion counts (NumPy only);
- `results`: results.json reading, the per-run and per-fold tables, protocol checks (no torch);
- `snapshots`: the training snapshot format: naming, saving, finding, validating, loading;
- `provenance`: git commit and the protocol record that results carry;
- `logs`: run log files and progress bars;
- `devices`: device choice, autocast, moving image batches;
- `rng`: seeding and saving/restoring every random generator;
- `curves`: TensorBoard events and progress.png of a training run;
- `train_step`: one optimisation step of FAF-Net.

Nothing here is imported by this file, so `import experiment.metrics` stays light.
"""
