"""Installs the project's packages (editable: `make setup` runs `pip install -e .`) and builds
the Cython extension for 3D supervoxels. The scripts at the repository root (train.py,
test.py, segment.py, config.py, utils.py) are run from there and are not installed."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

extensions = [
    Extension(
        "data.supervoxels._felzenszwalb_3d",
        ["data/supervoxels/_felzenszwalb_3d.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O3"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    name="fafnet-fsmis",
    version="0.3.0",
    description="FAF-Net for few-shot medical image segmentation: a faithful, tested reproduction",
    python_requires=">=3.9",
    packages=find_packages(include=["models", "models.*", "dataloaders", "dataloaders.*", "data", "data.*",
                                    "experiment", "experiment.*", "bench", "bench.*"]),
    ext_modules=cythonize(extensions, language_level=3),
)
