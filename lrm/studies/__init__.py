"""Over-optimisation studies (docs/studies.md): proxy vs gold reward over a tuning run and against the
distance from the initial student, the gold peak, Gao et al.'s fit and early-stopping rules (overopt), a
KL-like distance between two denoisers (distance), and the HTML report with metrics.json (report)."""
