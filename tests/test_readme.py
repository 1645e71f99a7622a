import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Run the tests:\s*```bash\n(.+?)\n```", readme, re.S)
    assert block, "README.md lacks the 'Run the tests' block"
    readme_command = block.group(1).strip().split(" && ", 2)[-1]  # after venv + activate
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_command in ci.splitlines(), (readme_command, ci)
