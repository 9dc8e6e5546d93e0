"""Scoring: museval BSSEval v4 and global SDR, the MUSDB runner, oracles, reports and plots."""
