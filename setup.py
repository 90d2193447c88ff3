"""The native fan-out extension (gbmedia/sfu/_fanout.c); everything else is in pyproject.toml.

Optional: without gcc, the Python headers or libsrtp2-dev the package installs without it
and the node forwards in Python (gbmedia/sfu/fanout.py says which path runs). It links
Debian's libsrtp2 (and libdl: at import it switches to the libsrtp 2 inside pylibsrtp's
wheel, built on OpenSSL and about three times faster here).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gbmedia.sfu._fanout",
            sources=["gbmedia/sfu/_fanout.c"],
            libraries=["srtp2", "dl"],
            extra_compile_args=["-O2", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
