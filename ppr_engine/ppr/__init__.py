"""Post-purification attacks and analysis: the Retuning Attack (RA), the Query-based
Reactivation Attack (QRA) and the backdoor-connected path (LMC)."""
