"""One module per fault scenario; scripts/docker-tests.sh runs every file here."""
