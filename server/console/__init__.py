"""The browser console: one static page (HTML, JS, CSS shipped beside this module) that
drives the public API with the key its user pastes. The page holds no data, so it is served
without a key; everything it shows comes from the API calls it makes."""
