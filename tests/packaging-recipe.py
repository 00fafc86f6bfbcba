"""The tunnel-agent recipe as BitBake's own datastore reads it (tests/packaging-tools.sh runs
this in a build directory): every PACKAGECONFIG is defined (the invalid-packageconfig QA check
of do_configure, which cannot run here), the tls PACKAGECONFIG gives --no-default-features to
cargo exactly once when it is off and never when it is on, and S lies where the release
unpacks (UNPACKDIR on wrynose, WORKDIR on scarthgap)."""
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(shutil.which("bitbake"))), "lib"))
import bb.tinfoil  # noqa: E402

problems = []
with bb.tinfoil.Tinfoil() as tinfoil:
    tinfoil.prepare(quiet=2)
    d = tinfoil.parse_recipe("tunnel-agent")
    defined = d.getVarFlags("PACKAGECONFIG") or {}
    for item in (d.getVar("PACKAGECONFIG") or "").split():
        if item not in defined:
            problems.append("invalid PACKAGECONFIG %s (no PACKAGECONFIG[%s])" % (item, item))

    def cargo_args():
        # What cargo gets: the flags, and on releases whose cargo class passes them, the
        # PACKAGECONFIG arguments.
        return (d.getVar("CARGO_BUILD_FLAGS") + " " + (d.getVar("PACKAGECONFIG_CONFARGS") or "")).split()

    on = cargo_args()
    print("PACKAGECONFIG=%r: %s" % (d.getVar("PACKAGECONFIG"), " ".join(on)))
    if "tls" not in d.getVar("PACKAGECONFIG").split():
        problems.append("tls is not in the default PACKAGECONFIG")
    if on.count("--no-default-features") != 0:
        problems.append("--no-default-features with tls on")
    if " ".join(on).count("--bin tunnel-agent") != 1:
        problems.append("not exactly one --bin tunnel-agent")
    d.setVar("PACKAGECONFIG", "")
    off = cargo_args()
    print("PACKAGECONFIG='': %s" % " ".join(off))
    if off.count("--no-default-features") != 1:
        problems.append("tls off gives --no-default-features %d times" % off.count("--no-default-features"))
    s, unpackdir, workdir = d.getVar("S"), d.getVar("UNPACKDIR"), d.getVar("WORKDIR")
    print("S=%s" % s)
    if s != os.path.join(unpackdir or workdir, "tunnel-agent"):
        problems.append("S=%s is not under %s" % (s, unpackdir or workdir))
for p in problems:
    print("problem: " + p)
sys.exit(1 if problems else 0)
