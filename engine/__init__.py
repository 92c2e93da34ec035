"""The animation engine: model families, their networks and loaders, independent of the service."""
