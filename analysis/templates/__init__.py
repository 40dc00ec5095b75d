"""Jinja2 templates of the report (a package so that non-editable installs ship the *.j2 files)."""
