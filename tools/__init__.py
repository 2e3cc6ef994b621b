"""Scripts run from a checkout (`python -m tools.<name>`, PYTHONPATH=services:.), outside the
installed amcsearch package because they import models/."""
