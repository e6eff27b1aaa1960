package lc

import (
	"strings"
	"testing"

	"peapod/internal/usernstest"
)

// usernsTests run again as root of a user namespace (rootless peapod),
// where the helper decides differently.
var usernsTests = []string{
	"TestOOMScoreAdjIsClampedWithoutCapSysResource",
	"TestOCISpecDefaults",
}

func TestInUserNamespace(t *testing.T) {
	usernstest.RequireRoot(t)
	out := usernstest.Run(t, "^("+strings.Join(usernsTests, "|")+")$", usernstest.Options{Args: []string{"-test.v"}})
	for _, name := range usernsTests {
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass in the user namespace:\n%s", name, out)
		}
	}
}
