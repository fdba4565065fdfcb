"""Small files that ask for gigabytes (gzip and pickle bombs, oversized archive members,
huge layers), and measuring what reading one costs in memory, in a fresh process."""

import io
import subprocess
import sys
import textwrap
import zipfile

import numpy as np


def refusal_and_growth(setup: str, call: str, timeout: float = 300) -> tuple[str, int]:
    """Run ``setup`` (imports), then ``call`` in a fresh Python; returns ``"refused: "`` and
    the message of the :class:`~dlsys.errors.DlsysError` it raised (empty if none), and how
    many KiB the process's peak memory (``ru_maxrss``) grew while ``call`` ran."""
    child = textwrap.dedent("""
        import resource
        from dlsys.errors import DlsysError
        {setup}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            {call}
        except DlsysError as e:
            print("refused:", e)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("grown_kib", grown)
    """).format(setup=setup, call=call)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr
    output, grown = result.stdout.split("grown_kib")
    return output, int(grown)


def write_npy_member(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...],
                     zeros: int) -> None:
    """An ``.npz`` member ``name``: a ``.npy`` header declaring float32 ``shape``, then
    ``zeros`` zero bytes (whatever the header says), compressed as it is written, never all
    in memory: 128 MiB of it is 128 KB in a deflated archive."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    chunk = bytes(1 << 20)
    with archive.open(name + ".npy", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        for start in range(0, zeros, len(chunk)):
            member.write(chunk[:zeros - start])
