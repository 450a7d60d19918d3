# The migration test's guest: a 512-byte boot sector for a PC (SeaBIOS), run by QEMU
# under software emulation. It fills FILL_START..FILL_END of its memory with data that is
# not zero (so a migration must really send it), then, once a second, adds one to a
# counter, writes the counter into the first word of each page of DIRTY_START..DIRTY_END
# (memory the migration must send again) and prints "hostbus-guest count N" on COM1.
# Between timer ticks it halts, so an idle guest costs little host CPU.
# Built by scripts/hypervisor_pair.py: as --32 --defsym FILL_END=... ; ld --oformat binary.
        .code16
        .globl  _start
        .set    COM1, 0x3f8
        .set    BIOS_TICKS, 0x46c          # BIOS data area: timer ticks, 18.2 a second
        .set    TICKS_PER_COUNT, 18

_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        ljmp    $0, $serial_setup          # CS:IP may be 07c0:0000; make it 0000:7cxx

serial_setup:                               # COM1: 115200 baud, 8N1, no interrupts
        mov     $COM1+1, %dx
        xor     %al, %al
        out     %al, %dx
        mov     $COM1+3, %dx
        mov     $0x80, %al
        out     %al, %dx
        mov     $COM1, %dx
        mov     $1, %al
        out     %al, %dx
        mov     $COM1+1, %dx
        xor     %al, %al
        out     %al, %dx
        mov     $COM1+3, %dx
        mov     $0x03, %al
        out     %al, %dx

        call    unreal
        mov     $FILL_START, %edi
fill:   mov     %edi, %fs:(%edi)            # the address itself: not zero, not repeated
        add     $4, %edi
        cmp     $FILL_END, %edi
        jb      fill

        xor     %ecx, %ecx                  # the counter
        mov     BIOS_TICKS, %bx
        sti
wait:   hlt                                 # until the next timer interrupt
        mov     BIOS_TICKS, %ax
        sub     %bx, %ax
        cmp     $TICKS_PER_COUNT, %ax
        jb      wait
        mov     BIOS_TICKS, %bx
        inc     %ecx
        call    unreal                      # BIOS interrupt code may have reset FS's limit
        mov     $DIRTY_START, %edi
dirty:  mov     %ecx, %fs:(%edi)
        add     $4096, %edi
        cmp     $DIRTY_END, %edi
        jb      dirty
        call    print_count
        jmp     wait

# "Unreal mode": FS keeps a 4 GiB limit after a round trip through protected mode, so
# real-mode code can reach memory above 1 MiB through it.
unreal:
        pushf
        cli
        push    %eax
        lgdt    gdt_descriptor
        mov     %cr0, %eax
        or      $1, %al
        mov     %eax, %cr0
        jmp     1f
1:      push    %bx
        mov     $8, %bx
        mov     %bx, %fs
        pop     %bx
        and     $0xfe, %al
        mov     %eax, %cr0
        jmp     2f
2:      xor     %ax, %ax                    # FS = 0 again; its 4 GiB limit stays
        mov     %ax, %fs
        pop     %eax
        popf
        ret

print_count:                                # "hostbus-guest count <ecx>\r\n"
        push    %ecx
        mov     $label, %si
1:      lodsb
        test    %al, %al
        jz      2f
        call    putc
        jmp     1b
2:      mov     %ecx, %eax
        xor     %bp, %bp
        mov     $10, %esi
3:      xor     %edx, %edx
        div     %esi
        push    %dx
        inc     %bp
        test    %eax, %eax
        jnz     3b
4:      pop     %ax
        add     $'0', %al
        call    putc
        dec     %bp
        jnz     4b
        mov     $'\r', %al
        call    putc
        mov     $'\n', %al
        call    putc
        pop     %ecx
        ret

putc:                                       # AL to COM1, once it can take a byte
        push    %dx
        push    %ax
        mov     $COM1+5, %dx
1:      in      %dx, %al
        test    $0x20, %al
        jz      1b
        pop     %ax
        mov     $COM1, %dx
        out     %al, %dx
        pop     %dx
        ret

label:  .asciz  "hostbus-guest count "

        .p2align 3
gdt:    .quad   0                           # null descriptor
        .quad   0x00cf92000000ffff          # 0x08: data, base 0, limit 4 GiB
gdt_descriptor:
        .word   gdt_descriptor - gdt - 1
        .long   gdt

        .org    510
        .word   0xaa55
