"""One run's life before and around the worker: requesting (every trigger takes one path),
approvals, admission and the queue, relaunch, and the reaper that repairs lost runs."""
