"""3D supervoxels (docs/protocol.md section 13).

- `fafnet.supervoxels.felzenszwalb_3d.felzenszwalb_3d`: the segmentation (compiled core, built by
  `make setup`).
- `fafnet.supervoxels.generate`: pseudo-label volumes for a dataset folder (CLI).

Nothing is imported here, so that importing the package never needs the compiled module.
"""
