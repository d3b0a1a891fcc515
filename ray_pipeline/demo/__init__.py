"""The demo: a use of the platform, not a stage of it. Synthetic traffic before and after a drift
replayed against the served model (`replay`), the closed loop as the demo and the notebook show it
(`showcase`), and the demo command's steps (`run`)."""
