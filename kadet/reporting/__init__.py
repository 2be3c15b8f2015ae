"""What a person reads after a run: report.html, its plots, and kadet run's console."""
