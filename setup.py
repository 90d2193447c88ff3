"""The native extensions; everything else is in pyproject.toml.

- gbmedia/sfu/_fanout.c, the RTP fan-out. It links Debian's libsrtp2 (and libdl: at import it
  switches to the libsrtp 2 inside pylibsrtp's wheel, built on OpenSSL and about three times
  faster here).
- gbmedia/sfu/_remb.c, a published track's bandwidth estimate (aiortc's, the same results).
  ``-ffp-contract=off``: no fused multiply-adds, so its doubles round as Python's floats do.

Both are optional: without gcc, the Python headers or libsrtp2-dev the package installs
without them and the node runs the Python code instead (gbmedia/sfu/fanout.py and
gbmedia/sfu/remb.py say which runs).
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
        ),
        Extension(
            "gbmedia.sfu._remb",
            sources=["gbmedia/sfu/_remb.c"],
            libraries=["m"],
            extra_compile_args=["-O2", "-std=c11", "-ffp-contract=off", "-Wall"],
            optional=True,
        ),
    ]
)
