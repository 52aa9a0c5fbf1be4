"""Guest side: every case through nftdocker's CLI in one Python process (start-up is slow under TCG).

For each /cases/CASE it runs the same steps steps.sh used to run one process each, framed by the
same @@BEGIN/@@END markers: apply, the kernel's ruleset, the compat form of the live table against
the expected iptables-save and ip6tables-save text, remove, and a check that nothing is left.
"""

import contextlib
import difflib
import io
import os
import subprocess
import sys

sys.path.insert(0, "/opt/nftdocker")
from nftdocker.cli import main as cli  # noqa: E402


def uptime():
    with open("/proc/uptime") as f:
        return f.read().split()[0]


def step(name, fn):
    print(f"@@BEGIN {name} t={uptime()}", flush=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = fn()
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # a traceback is a failure the host test must see
            import traceback

            traceback.print_exc()
            rc = 99
    text = out.getvalue()
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    print(f"@@END {name} rc={rc} t={uptime()}", flush=True)
    return rc


def nft(*args):
    r = subprocess.run(["nft", *args], capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    return r.returncode


def compat(want_path, *flags):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["show", "--format", "iptables", *flags])
    if rc != 0:
        print(f"nftdocker show --format iptables {' '.join(flags)} exited {rc}")
        return rc
    with open(want_path) as f:
        want = [l for l in f.read().splitlines(True) if not l.startswith("#")]
    got = [l for l in out.getvalue().splitlines(True) if not l.startswith("#")]
    diff = list(difflib.unified_diff(want, got, want_path, "nftdocker show --format iptables " + " ".join(flags)))
    sys.stdout.writelines(diff)
    return 1 if diff else 0


def not_left():
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    print(r.stdout, end="")
    return 1 if "nftdocker" in r.stdout else 0


def main(root):
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        nft("flush", "ruleset")
        step(f"apply/{name}", lambda: cli.main(["apply", os.path.join(d, "scenario.toml")]))
        step(f"ruleset/{name}", lambda: nft("list", "ruleset"))
        step(f"compat4/{name}", lambda: compat(os.path.join(d, "iptables-save.txt")))
        step(f"compat6/{name}", lambda: compat(os.path.join(d, "ip6tables-save.txt"), "--ipv6"))
        step(f"remove/{name}", lambda: cli.main(["remove"]))
        step(f"removed/{name}", not_left)


if __name__ == "__main__":
    main(sys.argv[1])
