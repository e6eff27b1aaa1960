#include "textflag.h"

// func exitZero()
// A raw signal handler: exit_group(0). It needs no stack and never returns.
TEXT ·exitZero(SB),NOSPLIT|NOFRAME,$0-0
	MOVD	$0, R0
	MOVD	$94, R8	// SYS_exit_group
	SVC
	UNDEF	// unreachable

// func exitZeroPC() uintptr
TEXT ·exitZeroPC(SB),NOSPLIT,$0-8
	MOVD	$·exitZero(SB), R0
	MOVD	R0, ret+0(FP)
	RET
