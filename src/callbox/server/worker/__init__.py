"""Media hosts and the main process's handles on them (in-process or in worker processes)."""
