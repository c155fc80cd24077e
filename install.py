"""Run by ComfyUI Manager (and comfy-cli) after ``pip install -r requirements.txt``; by hand:
``python install.py`` with the Python that runs ComfyUI.

Leaves exactly one working ONNX runtime for face detection (the GPU build where CUDA is available,
the CPU build otherwise, keeping a working runtime you already chose) and installs insightface
without letting it pull a second runtime. See cradle2cane/tools/onnx_runtime.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cradle2cane.tools.onnx_runtime import main  # noqa: E402  (standard library only)

if __name__ == "__main__":
    sys.exit(main())
