"""hostbus test helpers: a pytest plugin with a throwaway vhost per run."""
