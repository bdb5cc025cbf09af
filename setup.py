"""Builds the Cython extension for 3D supervoxels: `python setup.py build_ext --inplace`
(`make setup` runs it)."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

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
    ext_modules=cythonize(extensions, language_level=3),
    packages=[],
)
