"""Request handling behind the routes: plain classes a unit test drives without HTTP."""
