"""The upstream data-engineering location: raw data that model teams build on."""
