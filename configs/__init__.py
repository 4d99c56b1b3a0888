"""One python file per experiment: ``get_config()`` returns its ``ml_collections.ConfigDict``."""
