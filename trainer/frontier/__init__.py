"""The compression frontier: every embedding compression scheme trained, exported as a real
bundle, and placed by test AUC against the bytes the bundle serves (trainer.frontier.job)."""
