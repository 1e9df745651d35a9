"""The notebook API: `import harness` is cheap, and the README's example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_harness_loads_neither_torch_nor_transformers():
    code = "import sys, harness; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_resolve():
    import harness

    for name in harness.__all__:
        assert getattr(harness, name) is not None, name
    assert callable(harness.analyze) and harness.analyze.__module__ == "harness.pipeline"


def test_the_readme_notebook_example_runs(capsys, tiny_cache, monkeypatch):
    monkeypatch.setenv("OUTLIERS_TINY_CACHE", str(tiny_cache))
    text = README.read_text()
    section = text[text.index("## Notebook API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert "self_attn.q_proj" in lines[1] and lines[1].endswith("True")
