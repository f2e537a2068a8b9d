// Loader: mrvi.so has no libtorch dependency. It dlopen()s mrvi_core.so (Rust +
// tch + libtorch) with RTLD_DEEPBIND so that libtorch_cpu.so resolves its own BLAS
// symbols (sgemm_/dgemm_ -> bundled MKL) instead of binding to R's libblas.so.3
// (5-10x slower), then forwards routine registration to the extendr module.
// MRVI_NO_DEEPBIND=1 loads without RTLD_DEEPBIND (for A/B benchmarks).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <R_ext/Rdynload.h>
#include <R_ext/Error.h>

static void *core_handle = NULL;

void R_init_mrvi(DllInfo *dll) {
    Dl_info info;
    char path[4096];
    if (!dladdr((void *) &R_init_mrvi, &info) || !info.dli_fname)
        Rf_error("mrvi: cannot determine the path of mrvi.so");
    const char *slash = strrchr(info.dli_fname, '/');
    size_t dirlen = slash ? (size_t) (slash - info.dli_fname + 1) : 0;
    const char *core = "mrvi_core.so";
    if (dirlen + strlen(core) + 1 > sizeof(path)) Rf_error("mrvi: path too long");
    memcpy(path, info.dli_fname, dirlen);
    strcpy(path + dirlen, core);

    int flags = RTLD_NOW | RTLD_LOCAL;
    const char *nodb = getenv("MRVI_NO_DEEPBIND");
    if (!(nodb && *nodb && strcmp(nodb, "0"))) flags |= RTLD_DEEPBIND;
    core_handle = dlopen(path, flags);
    if (!core_handle)
        Rf_error("mrvi: cannot load %s: %s\nReinstall the package (tools/setup.sh, then R CMD INSTALL).",
                 path, dlerror());

    void (*hook)(void) = (void (*)(void)) dlsym(core_handle, "register_extendr_panic_hook");
    void (*init)(DllInfo *) = (void (*)(DllInfo *)) dlsym(core_handle, "R_init_mrvi_extendr");
    if (!init) Rf_error("mrvi: R_init_mrvi_extendr not found in %s", path);
    if (hook) hook();
    init(dll);
}
