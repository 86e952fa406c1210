"""How is a notebook run headless, with this checkout's code and only the parameters it declares?

`execute` runs one notebook with papermill on the project's own kernel (`ensure_kernel` registers this interpreter
inside its environment when the kernel is missing or points elsewhere), passing only the names its ``parameters``
cell assigns; a failing cell becomes one error line naming the notebook, the cell and the executed copy.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from anima_probe.pipeline.provenance import REPO_ROOT

KERNEL = "anima-probe"


def ensure_kernel() -> str:
    """Register the project's kernel (this interpreter) inside its environment if it is missing or points at
    another interpreter, so papermill runs notebooks with the package and versions of this checkout."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        if KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable:
            return KERNEL
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="anima-probe (this checkout)", prefix=sys.prefix)
    return KERNEL


def declared_parameters(notebook: str | Path) -> set[str]:
    """Names assigned at top level in the cell tagged ``parameters``.

    By hand (a few lines of ast) because papermill.inspect_notebook insists on kernel metadata first."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if not cells:
        return set()
    names = set()
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def execute(notebook: str | Path, out_path: str | Path, parameters: dict[str, Any]) -> Path:
    """Run one notebook headless; only the parameters its `parameters` cell declares are passed."""
    import papermill

    notebook = Path(notebook)
    declared = declared_parameters(notebook)
    params = {k: v for k, v in parameters.items() if k in declared}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(notebook), str(out_path), parameters=params, kernel_name=ensure_kernel(), language="python",
                                   progress_bar=False, cwd=str(REPO_ROOT))
    except papermill.PapermillExecutionError as err:
        raise RuntimeError(f"{notebook} failed in cell {err.exec_count}: {err.ename}: {err.evalue} "
                           f"(executed copy with the traceback: {out_path})") from None
    return Path(out_path)
