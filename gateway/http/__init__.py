"""The HTTP front: the aiohttp app, its endpoints, answers and errors as clients see them, auth, the admin API."""
