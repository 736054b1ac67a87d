"""HTML reports and figures of surrogate fits."""

from lrm.reports.html import write_report

__all__ = ["write_report"]
