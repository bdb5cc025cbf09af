"""Installs the `fafnet` package (editable: `make setup` runs `pip install -e .`), builds the
Cython extension for 3D supervoxels and declares the console scripts. The scripts at the
repository root (train.py, test.py, segment.py, utils.py) are thin entry points into the same
package for the release's commands; config.py at the root holds the options they start from."""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithConfig(build_py):
    """Also ships the root config.py inside the package (fafnet/cli/packaged_config.py), so a
    non-editable install has the same defaults; a checkout's own config.py (or FAFNET_CONFIG)
    comes first (fafnet/cli/experiment.py)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's config.py itself
        target = os.path.join(self.build_lib, "fafnet", "cli")
        self.mkpath(target)
        self.copy_file("config.py", os.path.join(target, "packaged_config.py"))

extensions = [
    Extension(
        "fafnet.supervoxels._felzenszwalb_3d",
        ["fafnet/supervoxels/_felzenszwalb_3d.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O3"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    name="fafnet-fsmis",
    version="0.6.0",
    description="FAF-Net for few-shot medical image segmentation: a faithful, tested reproduction",
    python_requires=">=3.9",
    packages=find_packages(include=["fafnet", "fafnet.*"]),
    entry_points={"console_scripts": [
        "fafnet-train = fafnet.cli.train:cli",
        "fafnet-evaluate = fafnet.cli.evaluate:cli",
        "fafnet-segment = fafnet.cli.segment:cli",
        "fafnet-preprocess = fafnet.cli.preprocess:cli",
        "fafnet-results = fafnet.cli.results:cli",
        "fafnet-study = fafnet.cli.study:cli",
    ]},
    cmdclass={"build_py": BuildWithConfig},
    ext_modules=cythonize(extensions, language_level=3),
)
