# Varnish in front of the benchmark's origin, written by `cdn bench compare` into its run
# directory (`@VAR@` are filled in). Varnish caches whole objects (no slicing): a Range
# request on a miss fetches the whole object from the origin and is answered from it;
# concurrent misses wait on the first fetch (waiting list); do_stream sends bytes to the
# first client while they arrive.
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "39439";
}

sub vcl_backend_response {
    set beresp.do_stream = true;
}
