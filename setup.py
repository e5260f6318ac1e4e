# The C extension (chordlab._simd) is declared here: setuptools' cffi_modules has no pyproject.toml form.
# It is optional: without a working C compiler, chordlab installs all the same; backend "simd" then says
# "unavailable" with the compiler's error (kept in chordlab/_simd_build_error.txt) and every other chapter runs.
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

NOTE = "_simd_build_error.txt"


class OptionalBuildExt(build_ext):
    failed = False
    in_source = False

    def run(self):
        self.in_source = bool(self.inplace or getattr(self, "editable_mode", False))  # run() clears inplace
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError), or the copy of a failed build
            if not self.failed:
                self._skipped(exc)

    def notes(self):
        """Where the reason goes: beside the built extension, and in the source tree for in-place builds."""
        places = [Path(self.get_ext_fullpath(ext.name)).parent / NOTE for ext in self.extensions]
        if self.in_source:
            places.append(Path(__file__).resolve().parent / "chordlab" / NOTE)
        return places

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, ...
            self._skipped(exc)
        else:
            for note in self.notes():
                note.unlink(missing_ok=True)

    def _skipped(self, exc):
        self.failed = True
        reason = " ".join(str(exc).split()) or type(exc).__name__
        for note in self.notes():
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(reason + "\n")
        print(f"\n*** chordlab: the C extension (chapter 4's SIMD kernels) was not built: {reason}\n"
              "*** chordlab is installed without it: backend 'simd' is unavailable, everything else works.\n"
              "*** Install a C compiler (gcc or clang; on macOS: xcode-select --install) and reinstall.\n",
              file=sys.stderr)


setup(cffi_modules=["csrc/build_ffi.py:ffibuilder"], cmdclass={"build_ext": OptionalBuildExt})
