/*
 * routes_web.c — the dashboard, served from kilnd itself: GET / is web/index.html and
 * GET /ui/{file} the other files of web/ and the chart library (uPlot) from npm, all
 * embedded at build time by cmake/embed_web.cmake into a generated C file, so one
 * binary serves everything with nothing fetched from the network at run time.
 *
 * These pages hold no data: everything they show comes from the v1/v2 API, with the
 * token the user typed (kept in the browser's localStorage) when kilnd has one.
 */
#include "ksrv_http.h"

#include <stdio.h>
#include <string.h>

/* The generated file (build/kiln_web_assets.c) defines these. */
typedef struct kiln_web_file {
    const char *name;
    const char *content_type;
    const unsigned char *data;
    size_t size;
} kiln_web_file;
extern const kiln_web_file kiln_web_files[];
extern const size_t kiln_web_file_count;

/* The pages load only from here; inline styles are what uPlot sets on its elements. */
#define CSP "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; " \
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"

static void serve(ksrv_response *response, const char *name)
{
    for (size_t i = 0; i < kiln_web_file_count; i++) {
        const kiln_web_file *f = &kiln_web_files[i];
        if (strcmp(f->name, name) != 0) continue;
        /* the bytes live in the binary: MHD sends them without a copy */
        struct MHD_Response *r = MHD_create_response_from_buffer(
            f->size, (void *)f->data, MHD_RESPMEM_PERSISTENT);
        if (!r) {
            ksrv_respond_error(response, 500, "internal", NULL, "out of memory");
            return;
        }
        /* no-cache: revalidate on each load, so a new kilnd never runs an old page */
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
        if (!strcmp(f->content_type, "text/html; charset=utf-8")) {
            MHD_add_response_header(r, "Content-Security-Policy", CSP);
            MHD_add_response_header(r, "X-Frame-Options", "DENY");
        }
        response->status = 200;
        response->content_type = f->content_type;
        response->prepared = r;
        return;
    }
    if (!strncmp(name, "uPlot.", 6)) {
        /* built without npm: empty stand-ins keep the page free of load errors; it says
         * that charts are missing */
        static const char empty[] = "/* the chart library is not built in */\n";
        struct MHD_Response *r = MHD_create_response_from_buffer(sizeof empty - 1, (void *)empty,
                                                                 MHD_RESPMEM_PERSISTENT);
        if (r) {
            response->status = 200;
            response->content_type = strstr(name, ".css") ? "text/css" : "text/javascript";
            response->prepared = r;
            return;
        }
    }
    ksrv_respond_error(response, 404, "not_found", NULL, "no dashboard file %.100s", name);
}

void ksrv_handle_web_index(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)server, (void)request;
    serve(response, "index.html");
}

void ksrv_handle_web_asset(ksrv_server *server, ksrv_request *request, ksrv_response *response)
{
    (void)server;
    serve(response, request->params[0]);
}
