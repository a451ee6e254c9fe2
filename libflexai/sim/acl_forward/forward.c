/* The simulated libascendcl.so of a forwarding install (sim/cann/): like open-source CANN, where
 * the public aclrt* entry points are defined in libacl_rt.so and libascendcl.so only carries it
 * as a dependency (DT_NEEDED), this library defines none of the ACL API. A program that dlopens
 * libascendcl.so and dlsyms aclrtMalloc gets the definition in libacl_rt.so (dlsym on a handle
 * searches the library and then its dependencies). sim/cann/libacl_rt.so is the whole simulated
 * runtime (the sim/acl sources), built under that name; see docs/simulator.md. */

/* Which layout this is, for a test or a person looking at the library (not part of ACL). */
const char *flexai_sim_acl_layout(void);
const char *flexai_sim_acl_layout(void)
{
    return "forwarding: libascendcl.so -> libacl_rt.so";
}
