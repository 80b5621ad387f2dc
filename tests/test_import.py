"""`import promptbake` and `promptbake --help` stay torch-free (fast start, light plugins)."""

import subprocess
import sys


def _modules_after(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout


def test_import_does_not_import_torch():
    code = ("import sys, promptbake; promptbake.load_plugins(); promptbake.backend_names('teacher');"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert _modules_after(code).split() == ["False", "False"]


def test_cli_help_does_not_import_torch():
    code = ("import sys\nfrom promptbake.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['plugins'])\nprint('torch' in sys.modules)")
    out = _modules_after(code)
    assert out.strip().splitlines()[-1] == "False"
    assert '"builtin"' in out
