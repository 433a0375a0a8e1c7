/* vmd's KVM probe guest: one boot sector that walks the steps a real guest's early boot takes,
 * printing a letter on COM1 after each: R (real mode), T (BIOS timer interrupts arrive),
 * A (A20 on, FPU reset, PIC masked, and this letter sent by string I/O), P (32-bit protected mode), L (64-bit long mode with paging), M (64 MiB of guest memory
 * written page by page), then BKPROBE. Run it with at least 80 MiB of guest memory.
 * Nested KVM that cannot run guests stops at one of these steps (or dies with an emulation
 * failure); vmd reports the last letter it saw.
 * Build: as --32 -o p.o kvm-probe.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o p.bin p.o
 * (vmd carries the resulting 512 bytes in src/virt_type.rs). */
        .code16
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $0x7c00, %sp
        mov $0x3f8, %dx
        mov $'R', %al
        out %al, %dx
        /* wait for 3 BIOS timer ticks (IRQ0) */
        mov 0x46c, %bx
        add $3, %bx
1:      sti
        hlt
        cli
        mov 0x46c, %ax
        cmp %bx, %ax
        jne 1b
        mov $'T', %al
        out %al, %dx
        /* what Linux's real-mode setup does next: A20 through the keyboard controller and
         * port 0x92, FPU reset, PIC masked; and string I/O (rep outsb), which KVM emulates */
5:      in $0x64, %al
        test $2, %al
        jnz 5b
        mov $0xd1, %al
        out %al, $0x64
6:      in $0x64, %al
        test $2, %al
        jnz 6b
        mov $0xdf, %al
        out %al, $0x60
        in $0x92, %al
        or $2, %al
        out %al, $0x92
        xor %al, %al
        out %al, $0xf0
        out %al, $0xf1
        mov $0xff, %al
        out %al, $0xa1
        mov $0xfb, %al
        out %al, $0x21
        mov $0x3f8, %dx
        mov $amsg, %si
        mov $1, %cx
        cld
        rep outsb
        /* page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD, one 2 MiB page) */
        mov $0x1000, %di
        mov $0x1800, %cx
        xor %ax, %ax
        rep stosw
        movl $0x2003, 0x1000
        movl $0x3003, 0x2000
        /* PD: 32 entries of 2 MiB = the first 64 MiB, identity mapped */
        mov $0x3000, %di
        mov $0x83, %eax
        mov $32, %cx
4:      mov %eax, (%di)
        add $0x200000, %eax
        add $8, %di
        loop 4b
        lgdt gdtr
        mov %cr0, %eax
        or $1, %eax
        mov %eax, %cr0
        ljmp $0x08, $pm32
        .code32
pm32:
        mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x3f8, %dx
        mov $'P', %al
        out %al, %dx
        mov %cr4, %eax
        or $0x20, %eax          /* PAE */
        mov %eax, %cr4
        mov $0x1000, %eax
        mov %eax, %cr3
        mov $0xc0000080, %ecx   /* EFER.LME */
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000000, %eax    /* paging */
        mov %eax, %cr0
        ljmp $0x18, $lm64
        .code64
lm64:
        mov $0x3f8, %dx
        mov $'L', %al
        out %al, %dx
        /* touch every 4 KiB page from 2 MiB to 64 MiB */
        mov $0x200000, %rdi
5:      mov %rdi, (%rdi)
        add $0x1000, %rdi
        cmp $0x4000000, %rdi
        jb 5b
        mov $'M', %al
        out %al, %dx
        lea msg(%rip), %rsi
2:      lodsb
        test %al, %al
        jz 3f
        out %al, %dx
        jmp 2b
3:      cli
        hlt
        jmp 3b
msg:    .asciz "BKPROBE\n"
amsg:   .ascii "A"
        .p2align 3
gdt:    .quad 0
        .quad 0x00cf9a000000ffff    /* 0x08: 32-bit code */
        .quad 0x00cf92000000ffff    /* 0x10: data */
        .quad 0x00af9a000000ffff    /* 0x18: 64-bit code */
gdtr:   .word gdtr - gdt - 1
        .long gdt
        .org 510
        .word 0xaa55
